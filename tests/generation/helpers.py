"""Shared settings of the generation tests."""

# a ddaepp DiT-tiny on 16 px digits, 2 steps: a real checkpoint in a few seconds
TINY = [
    "method=ddaepp", "data.name=digits", "data.image_size=16", "data.batch_size=8",
    "data.num_workers=0", "trainer.max_steps=2", "trainer.accelerator=cpu",
    "trainer.progress_bar=false", "model.arch=dit", "model.preset=DiT-tiny", "model.patch_size=4",
    "diffusion.objective=flow", "sampler.sampler=euler", "sampler.steps=2",
    "eval.online_knn=false", "eval.online_linear=false", "logger.wandb.enabled=false",
]
