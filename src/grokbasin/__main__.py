from grokbasin.cli import main

main()
