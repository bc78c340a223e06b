from latentbridge.cli import main

raise SystemExit(main())
