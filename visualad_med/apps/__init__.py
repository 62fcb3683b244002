"""Front-ends, thin: the ``visualad-med`` command and the MONAI bundle's glue."""
