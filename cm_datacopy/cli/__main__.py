from cm_datacopy.cli.commands import main

main()
