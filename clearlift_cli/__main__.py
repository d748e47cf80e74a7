from clearlift_cli.cli import main

main()
