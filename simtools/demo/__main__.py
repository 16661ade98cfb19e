from simtools.demo.run import main

main()
