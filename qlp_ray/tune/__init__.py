"""Hyperparameter search for adapter training (``qlp tune``): Ray Tune with ``OptunaSearch``
(TPE) and ASHA early stopping, each trial a Ray Train run of LoRA SFT; the best adapter
can be signed into the registry.
"""
