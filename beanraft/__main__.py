from beanraft.cli import main

raise SystemExit(main())
