from fastal.cli import main

main()
