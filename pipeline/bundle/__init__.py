"""Bundle access: the command-line override check that the bundles' ``initialize`` runs (:mod:`.overrides`)."""
