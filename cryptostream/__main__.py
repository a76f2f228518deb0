from cryptostream.cli import main

raise SystemExit(main())
