"""``python -m visualad_med`` (and ``torchrun -m visualad_med train ...``): the ``visualad-med`` command."""

import sys

from visualad_med.apps.cli import main

sys.exit(main())
