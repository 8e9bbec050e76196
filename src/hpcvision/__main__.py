from hpcvision.cli import main

raise SystemExit(main())
