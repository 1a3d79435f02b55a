"""`python -m medxpert` runs the command-line interface."""

from medxpert.cli import main

raise SystemExit(main())
