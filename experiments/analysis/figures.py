"""Figures of the fits, each written as PNG and SVG.

Figures are drawn on `matplotlib.figure.Figure` objects, which save through the Agg backend
without touching pyplot's global state. Axes: N in parameters, D in tokens, C in training
FLOPs, loss in nats per token. Bands are pointwise 95% bootstrap intervals.
"""

import os
import textwrap
from typing import Sequence

import numpy as np
from matplotlib import cm
from matplotlib import colors
from matplotlib import ticker
from matplotlib.figure import Figure

from isoflop.experiments.analysis import approach2
from isoflop.experiments.analysis import approach3
from isoflop.experiments.analysis import powerlaw

STYLES = {"approach1": ("Approach 1 (training-curve envelope)", "tab:blue", "o"),
          "approach2": ("Approach 2 (isoFLOP parabolas)", "tab:orange", "s"),
          "approach3": ("Approach 3 (parametric L(N, D))", "tab:green", None)}
COMPUTE_LABEL = "training compute C (FLOPs)"


def _save(fig: Figure, out_dir: str, name: str) -> list[str]:
  paths = [os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.svg")]
  fig.savefig(paths[0], dpi=150)
  fig.savefig(paths[1], metadata={"Date": None})  # no timestamp: reruns give identical files
  return paths


def isoflop_curves(profiles: Sequence[approach2.Profile], out_dir: str,
                   skipped: str | None = None) -> list[str]:
  """Loss against N per compute budget, the fitted parabolas and their minima (Approach 2).

  Also drawn when Approach 2 was skipped (`skipped` says why, in the title): the profiles then
  show what the sweep lacks.
  """
  fig = Figure(figsize=(7.5, 5), layout="constrained")
  ax = fig.add_subplot()
  used = [p for p in profiles if p.rejected is None]
  budgets = [p.c_nominal for p in profiles]
  norm = colors.LogNorm(min(budgets), max(budgets) * (1.0001 if len(budgets) == 1 else 1.0))
  budget_colors = cm.ScalarMappable(norm=norm, cmap="viridis")
  fig.colorbar(budget_colors, ax=ax, label="compute budget C (FLOPs)")
  for profile in profiles:
    color = budget_colors.to_rgba(profile.c_nominal)
    fitted = profile.rejected is None
    ax.scatter(profile.n, profile.loss, s=16, color=color, alpha=0.9 if fitted else 0.35,
               edgecolors="none")
    if fitted:
      log_n = np.linspace(np.log(profile.n.min()), np.log(profile.n.max()), 100)
      ax.plot(np.exp(log_n), np.polyval(profile.parabola, log_n), color=color, lw=1.2)
      ax.plot(profile.n_opt, profile.loss_opt, marker="*", ms=11, color=color,
              markeredgecolor="black", markeredgewidth=0.6, linestyle="none")
  ax.plot([], [], marker="*", ms=11, color="white", markeredgecolor="black", linestyle="none",
          label="parabola minimum (N_opt)")
  if len(used) < len(profiles):
    ax.scatter([], [], s=16, color="gray", alpha=0.35, label="budget not used (see fit.json)")
  ax.set_xscale("log")
  # Profiles often span less than a decade of N, where default log labels collide.
  ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(ticker.EngFormatter())
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.set_xlabel("parameters N")
  ax.set_ylabel("final loss (nats/token)")
  title = f"IsoFLOP profiles: {len(used)} of {len(profiles)} budgets with a parabola in ln N"
  if skipped is not None:
    title += "\n" + textwrap.fill(f"Approach 2 skipped: {skipped}", 90)
  ax.set_title(title, fontsize=10 if skipped is None else 8.5)
  ax.legend(loc="upper right", fontsize=8)
  ax.grid(True, which="both", alpha=0.25)
  return _save(fig, out_dir, "isoflop_curves")


def _frontier_panel(ax, frontier: powerlaw.Frontier, which: str, c: np.ndarray, label: str,
                    color: str, points=None, marker=None) -> None:
  law = frontier.n_opt if which == "n" else frontier.d_opt
  band = frontier.band(which, c)
  ax.plot(c, law(c), color=color, lw=1.5, label=f"{label}: exponent {law.exponent:.3f}")
  if band is not None:
    ax.fill_between(c, band[0], band[1], color=color, alpha=0.18, lw=0)
  if points is not None and marker is not None:
    ax.scatter(points[0], points[1], color=color, marker=marker, s=18, zorder=3)


def compute_axis(c_range: tuple[float, float], extrapolate_to: float) -> tuple[float, float]:
  """The optimal-scaling figure's compute range (FLOPs): the data's, stretched to reach
  `extrapolate_to` (by default one decade past the data: see analyze.default_extrapolation)."""
  return min(c_range[0], extrapolate_to), max(c_range[1], extrapolate_to)


def optimal_scaling_figure(results: dict, c_range: tuple[float, float], extrapolate_to: float,
                           compute_label: str = COMPUTE_LABEL) -> Figure:
  """N_opt(C) and D_opt(C) from each approach, extrapolated to `extrapolate_to` FLOPs.

  `results` maps "approach1".."approach3" to (Frontier, (C, N_opt, D_opt) arrays or None).
  """
  c = np.geomspace(*compute_axis(c_range, extrapolate_to), 200)
  fig = Figure(figsize=(11, 4.8), layout="constrained")
  axes = fig.subplots(1, 2)
  for ax, which, name, unit in ((axes[0], "n", "N_opt", "parameters"),
                                (axes[1], "d", "D_opt", "tokens")):
    for key, (frontier, points) in results.items():
      label, color, marker = STYLES[key]
      xy = None if points is None else (points[0], points[1 if which == "n" else 2])
      _frontier_panel(ax, frontier, which, c, label, color, xy, marker)
      law = frontier.n_opt if which == "n" else frontier.d_opt
      ax.plot(extrapolate_to, law(extrapolate_to), marker="D", color=color, ms=6,
              markeredgecolor="black", markeredgewidth=0.5)
    ax.axvline(extrapolate_to, color="gray", ls=":", lw=1,
               label=f"extrapolated to C = {extrapolate_to:.3g} FLOPs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(c[0], c[-1])
    ax.set_xlabel(compute_label)
    ax.set_ylabel(f"compute-optimal {name} ({unit})")
    ax.set_title(f"{name}(C), 95% bootstrap bands")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left")
  return fig


def optimal_scaling(results: dict, c_range: tuple[float, float], extrapolate_to: float,
                    out_dir: str, compute_label: str = COMPUTE_LABEL) -> list[str]:
  fig = optimal_scaling_figure(results, c_range, extrapolate_to, compute_label)
  return _save(fig, out_dir, "optimal_scaling")


def approach3_contours_figure(result: approach3.Result, n: np.ndarray, c_points: np.ndarray,
                              compute_label: str = COMPUTE_LABEL) -> Figure:
  """Contours of the fitted L(N, D) over (C, N), its frontier, and the data points (N, C).

  C is the points' own compute, as `compute_label` names it; the contours are at
  D = C / F(N), with the FLOPs per token F(N) = kappa N^phi fitted to the points' C/D, so a
  point sits where its own (N, D) is (to F's fit) and the frontier is under the same count.
  """
  law, optimum = result.law, result.optimum
  c = np.geomspace(c_points.min() / 3, c_points.max() * 3, 160)
  sizes = np.geomspace(n.min() / 3, n.max() * 3, 160)
  grid_c, grid_n = np.meshgrid(c, sizes)
  loss = law.loss(grid_n, grid_c / optimum.flops_per_token(grid_n))
  levels = np.unique(np.quantile(loss, np.linspace(0.0, 0.9, 16)))
  fig = Figure(figsize=(7.5, 5.5), layout="constrained")
  ax = fig.add_subplot()
  filled = ax.contourf(grid_c, grid_n, loss, levels=levels, cmap="magma_r", extend="max")
  ax.contour(grid_c, grid_n, loss, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
  fig.colorbar(filled, ax=ax, label="fitted loss L(N, D) (nats/token)")
  ax.plot(c, optimum.frontier().n_opt(c), color="tab:cyan", lw=2,
          label=f"efficient frontier N_opt = G (C/κ)^a, a = {optimum.a:.3f}")
  ax.scatter(c_points, n, s=10, color="black", edgecolors="white", linewidths=0.3,
             label=f"data ({len(n)} points)")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlim(c[0], c[-1])
  ax.set_ylim(sizes[0], sizes[-1])
  ax.set_xlabel(f"{compute_label}\ncontours at D = C / (κ N^φ), κ = {optimum.kappa:.3g}, "
                f"φ = {optimum.phi:.3f} fitted to the points' C/D")
  ax.set_ylabel("parameters N")
  ax.set_title(f"Approach 3: E = {law.E:.3f}, A = {law.A:.4g}, B = {law.B:.4g}, "
               f"α = {law.alpha:.3f}, β = {law.beta:.3f}", fontsize=10)
  ax.legend(loc="upper left", fontsize=8)
  return fig


def approach3_contours(result: approach3.Result, n: np.ndarray, c_points: np.ndarray,
                       out_dir: str, compute_label: str = COMPUTE_LABEL) -> list[str]:
  fig = approach3_contours_figure(result, n, c_points, compute_label)
  return _save(fig, out_dir, "approach3_contours")


def contrast(panels: dict, c_range: tuple[float, float], out_dir: str) -> list[str]:
  """N_opt(C) under the Kaplan and the Chinchilla conventions, side by side.

  `panels` maps a title to {"approach2": (Frontier, points or None), "approach3": ...}.
  """
  c_seen = [np.asarray(c_range)] + [points[0] for results in panels.values()
                                     for _, points in results.values() if points is not None]
  c = np.geomspace(min(x.min() for x in c_seen), max(x.max() for x in c_seen), 200)
  fig = Figure(figsize=(11, 4.8), layout="constrained")
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  for ax, (title, results) in zip(axes, panels.items(), strict=True):
    for key, (frontier, points) in results.items():
      label, color, marker = STYLES[key]
      xy = None if points is None else (points[0], points[1])
      _frontier_panel(ax, frontier, "n", c, label, color, xy, marker)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
  axes[0].set_ylabel("compute-optimal N_opt (parameters)")
  fig.suptitle("N_opt(C) with Kaplan vs Chinchilla counting of N and C")
  return _save(fig, out_dir, "contrast")
