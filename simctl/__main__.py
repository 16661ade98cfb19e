from simctl.cli import main

main()
