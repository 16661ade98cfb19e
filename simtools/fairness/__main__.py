from simtools.fairness.table import main

main()
