"""finexp's Optuna sweeper for Hydra (``hydra/sweeper=optuna``, used by ``hparams_search=optuna``): Optuna >= 4,
persistent and resumable studies (``storage`` + ``study_name``), pruning through a Lightning callback."""
