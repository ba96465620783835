"""Learning coefficient of reduced-rank regression (Aoyagi & Watanabe 2005), SPEC §3.8.

Model y = B A x with A ∈ R^{H×M}, B ∈ R^{N×H} (input size M, output size N, model rank H), true
map of rank r ≤ H. With s = H + r, the real log canonical threshold λ and its multiplicity m are

  N + r ≤ M + H,  M + r ≤ N + H,  s ≤ M + N:
      s + M + N even: λ = [2s(M + N) − (M − N)² − s²] / 8,      m = 1
      s + M + N odd:  λ = [2s(M + N) − (M − N)² − s² + 1] / 8,  m = 2
  M + H < N + r:  λ = [HM − Hr + Nr] / 2,  m = 1
  N + H < M + r:  λ = [HN − Hr + Mr] / 2,  m = 1
  M + N < s:      λ = MN / 2,              m = 1
"""

from __future__ import annotations


def rrr_learning_coefficient(M: int, N: int, H: int, r: int) -> tuple[float, int]:
    """(λ, multiplicity) of reduced-rank regression (M inputs, N outputs, ranks H, r)."""
    if min(M, N, H) < 1 or r < 0:
        raise ValueError(f"need M, N, H >= 1 and r >= 0, got M={M}, N={N}, H={H}, r={r}")
    if r > min(H, M, N):
        raise ValueError(f"true rank r={r} exceeds min(H, M, N)={min(H, M, N)}")
    s = H + r
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2, 1
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2, 1
    if M + N < s:
        return M * N / 2, 1
    base = 2 * s * (M + N) - (M - N) ** 2 - s * s
    if (s + M + N) % 2 == 0:
        return base / 8, 1
    return (base + 1) / 8, 2


def rank_matched_llc(d: int, r: int) -> float:
    """λ = r(2d − r)/2 of the realisable rank-matched linear network W₂W₁ (d = M = N, H = r)."""
    if not 0 <= r <= d:
        raise ValueError(f"need 0 <= r <= d, got r={r}, d={d}")
    return r * (2 * d - r) / 2
