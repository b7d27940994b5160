"""The notebook path: import a model (the decoder, dense or MoE, the LSTM, the encoder, the
encoder-decoder, the ViT and the ResNet), build its config, init and apply, jitted as a
notebook would (eager Flax compiles each small op on its own); nothing else."""

import subprocess
import sys
import textwrap


def test_model_import_needs_no_training_config_mesh_or_flags(tmp_path):
  script = textwrap.dedent("""
      import sys
      import jax, jax.numpy as jnp
      from isoflop.models import transformer
      cfg = transformer.TransformerConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4)
      model = transformer.Decoder(cfg)
      tokens = jnp.ones((2, 8), jnp.int32)
      params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
      logits = jax.jit(model.apply)({"params": params}, tokens)
      assert logits.shape == (2, 8, 97), logits.shape
      assert bool(jnp.isfinite(logits).all())
      # A mixture of experts is a decoder config; the LSTM is its own package.
      moe_cfg = transformer.TransformerConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4,
                                              num_experts=4, experts_per_token=2)
      moe = transformer.Decoder(moe_cfg)
      variables = jax.jit(moe.init)(jax.random.key(0), tokens)
      logits, aux = jax.jit(lambda v, t: moe.apply(v, t, mutable=["aux_loss", "aux_metrics"]))(
          {"params": variables["params"]}, tokens)
      assert logits.shape == (2, 8, 97) and "router_balance" in str(aux["aux_loss"])
      from isoflop.models.lstm import LstmConfig, LstmLm
      lstm = LstmLm(LstmConfig(vocab_size=97, d_model=32, n_layers=2))
      lstm_params = jax.jit(lstm.init)(jax.random.key(0), tokens)["params"]
      assert jax.jit(lstm.apply)({"params": lstm_params}, tokens).shape == (2, 8, 97)
      from isoflop.models.encoder import Encoder, EncoderConfig
      encoder = Encoder(EncoderConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4,
                                      type_vocab_size=2))
      encoder_params = jax.jit(encoder.init)(jax.random.key(0), tokens)["params"]
      assert jax.jit(encoder.apply)({"params": encoder_params}, tokens).shape == (2, 8, 97)
      from isoflop.models.encdec import EncDecConfig, EncoderDecoder
      t5 = EncoderDecoder(EncDecConfig(vocab_size=97, d_model=32, n_heads=4))
      targets = jnp.ones((2, 5), jnp.int32)
      t5_params = jax.jit(t5.init)(jax.random.key(0), tokens, targets)["params"]
      assert jax.jit(t5.apply)({"params": t5_params}, tokens, targets).shape == (2, 5, 97)
      from isoflop.models.resnet import ResNet, ResNetConfig
      from isoflop.models.vit import Vit, VitConfig
      images = jnp.ones((2, 8, 8, 1))
      for vision in (Vit(VitConfig(d_model=32, n_layers=2, n_heads=4)),
                     ResNet(ResNetConfig(stage_depths=(1, 1), stage_widths=(8, 16),
                                         stem_width=8))):
        vision_variables = jax.jit(vision.init)(jax.random.key(0), images)
        assert jax.jit(vision.apply)(vision_variables, images).shape == (2, 10)
      loaded = [m for m in sys.modules if m.startswith(("isoflop.train", "isoflop.sharding",
                                                        "isoflop.experiments", "ml_collections"))]
      assert not loaded, loaded
      print("ok")
  """)
  # A plain environment: no fake devices, no config, run from an unrelated directory.
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().endswith("ok")
