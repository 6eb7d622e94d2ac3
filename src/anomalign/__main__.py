from anomalign.cli import main

raise SystemExit(main())
