from simtools.drill.run import main

main()
