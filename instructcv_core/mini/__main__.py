from instructcv_core.mini.build import main

main()
