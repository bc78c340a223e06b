"""latentbridge-cola: run the released Cola DLM (Text VAE + block-causal DiT) in latentbridge.

    codec `cola-vae`        the Text VAE (latentbridge_cola.codec.ColaVAE)
    prior backbone `cola-dit`  the DiT (latentbridge_cola.dit.ColaDiT)
    experiment_config(path)  an experiment over a release directory; pipeline(path) -> a latentbridge Pipeline

See docs/cola.md of latentbridge.
"""

from latentbridge_cola.codec import ColaVAE, ColaVAEConfig
from latentbridge_cola.dit import ColaDiT, ColaDiTOptions
from latentbridge_cola.run import experiment_config, pipeline, write_run

__all__ = ["ColaDiT", "ColaDiTOptions", "ColaVAE", "ColaVAEConfig", "experiment_config", "pipeline", "write_run"]
