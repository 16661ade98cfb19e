from simctl.app import main

main()
