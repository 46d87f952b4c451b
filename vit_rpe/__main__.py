from vit_rpe.train import main

main()
