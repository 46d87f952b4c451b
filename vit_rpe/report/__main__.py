from vit_rpe.report.cli import main

main()
