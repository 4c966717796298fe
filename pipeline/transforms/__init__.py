"""Transform chains for 2D and 3D (:mod:`.chains`), class-balanced patch sampling with its validation
(:mod:`.sampling`), intensity normalisation (:mod:`.intensity`) and RGB-coded 2D label masks (:mod:`.labels2d`)."""
