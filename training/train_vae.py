"""Train the audio VAE (VAE-GAN, MeLoDy B.1) on random crops of the training clips.

``python -m training.train_vae --data data/music --out checkpoints/tiny --preset tiny --steps N [--gan-start S]``

The linear paths of the encoder and decoder start at whitened PCA of the log-magnitude frames of ``--pca-clips``
training clips (``VAE.init_linear_paths``). Before ``--gan-start`` steps (default: half of ``--steps``) the loss is
the multi-resolution STFT loss, the log-magnitude L1 and KL; from then on the MPD + MRD discriminators train too
(LSGAN, feature matching). Every ``--eval-every`` steps the multi-resolution STFT distance and the chroma
correlation of the posterior-mean reconstructions of a few valid clips are logged.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch

from melody_edge.models.discriminators import VAEDiscriminator
from melody_edge.models.losses import discriminator_loss, generator_loss, multi_resolution_stft_loss, stft_only_loss
from melody_edge.models.vae import VAE
from training.common import Run, load_audio, load_rows, parse_args, unwrap
from training.evaluate import reconstruction_metrics

log = logging.getLogger(__name__)


def _split_batch(logits: list[torch.Tensor], feats: list[list[torch.Tensor]], n: int):
    """Discriminator outputs of a (real; fake) batch -> (real logits, real feats, fake logits, fake feats)."""
    return ([x[:n] for x in logits], [[f[:n] for f in fs] for fs in feats],
            [x[n:] for x in logits], [[f[n:] for f in fs] for fs in feats])


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--crop-seconds", type=float, default=1.28, help="length of the random training crops")
    p.add_argument("--gan-start", type=int, default=None, help="step the GAN losses start (default: steps / 2)")
    p.add_argument("--pca-clips", type=int, default=200, help="training clips of the PCA initialisation")
    p.add_argument("--disc-channels", type=int, default=None,
                   help="width of the discriminators (training only; default: the preset's vae.disc_channels)")


def main(argv: Sequence[str] | None = None) -> None:
    """Train the VAE and ship it into ``--out``."""
    args = parse_args(__doc__.splitlines()[0], argv, batch=8, lr=2e-4, eval_clips=4, add_args=_add_args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run = Run(args, "vae")
    cfg = run.cfg
    gan_start = args.steps // 2 if args.gan_start is None else args.gan_start
    samples = round(cfg.window_seconds * cfg.sample_rate)
    crop = round(args.crop_seconds * cfg.sample_rate / cfg.vae.hop) * cfg.vae.hop
    rows = load_rows(args.data, "train")
    audio = load_audio(args.data, [rows[i] for i in run.shard(len(rows))], samples)
    valid = torch.from_numpy(load_audio(args.data, load_rows(args.data, "valid")[: args.eval_clips], samples))
    log.info("%d train clips on this rank, crops of %d samples, GAN from step %d", len(audio), crop, gan_start)

    disc_cfg = dataclasses.replace(cfg.vae, disc_channels=args.disc_channels or cfg.vae.disc_channels)
    model = VAE(cfg.vae)
    # the same clips on every rank, before DDP wraps the model (a resumed run overwrites this with its checkpoint)
    pca_rows = rows[:: max(1, len(rows) // args.pca_clips)][: args.pca_clips]
    pca = model.init_linear_paths(torch.from_numpy(load_audio(args.data, pca_rows, samples)))
    log.info("PCA init on %d clips: %d components explain %.3f of the log-magnitude variance", len(pca_rows),
             cfg.vae.latent_dim, pca["explained"])
    vae, disc = run.wrap(model), run.wrap(VAEDiscriminator(disc_cfg))
    opt_g = torch.optim.AdamW(vae.parameters(), lr=args.lr, betas=(0.8, 0.99))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.8, 0.99))

    def step() -> dict[str, float]:
        starts = run.rng.integers(0, samples - crop + 1, args.batch)
        picks = run.rng.integers(0, len(audio), args.batch)
        x = torch.from_numpy(np.stack([audio[i, s : s + crop] for i, s in zip(picks, starts, strict=True)]))
        x = x.to(run.device)
        recon, mean, logvar, log_mag, log_mag_target = vae(x, run.gen)
        if run.step < gan_start:
            loss, parts = stft_only_loss(cfg.vae, x, recon, mean, logvar, log_mag, log_mag_target)
        else:
            real_logits, real_feats, fake_logits, _ = _split_batch(*disc(torch.cat([x, recon.detach()])), len(x))
            d_loss = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            fake_logits, fake_feats = disc(recon)
            loss, parts = generator_loss(cfg.vae, x, recon, mean, logvar, real_feats, fake_logits, fake_feats,
                                         log_mag, log_mag_target)
            parts["disc"] = d_loss
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        model = unwrap(vae)
        model.eval()
        dists, chroma = [], []
        for clip in valid.to(run.device):
            recon = model.decode(model.encode(clip[None])[0])[:, :samples]
            dists.append(multi_resolution_stft_loss(clip[None], recon).item())
            chroma.append(reconstruction_metrics(clip.cpu().numpy(), recon[0].cpu().numpy(), cfg.sample_rate)
                          ["chroma_corr"])
        model.train()
        return {"valid_stft": float(np.mean(dists)), "valid_chroma": float(np.mean(chroma))}

    run.train(step, {"vae": vae, "disc": disc}, {"opt_g": opt_g, "opt_d": opt_d}, evaluate if len(valid) else None)
    run.finish((unwrap(vae)).state_dict())


if __name__ == "__main__":
    main()
