from trainflow.cli import main

raise SystemExit(main())
