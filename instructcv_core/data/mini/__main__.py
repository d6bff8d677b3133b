from instructcv_core.data.mini.build import main

main()
