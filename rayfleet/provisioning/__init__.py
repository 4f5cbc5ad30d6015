"""Where clusters come from: the embedded local fleet now; on-demand KubeRay clusters next (issue 3)."""
