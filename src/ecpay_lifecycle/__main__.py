"""``python -m ecpay_lifecycle`` runs the ``ecpay-lifecycle`` command."""

from ._cli import main

raise SystemExit(main())
