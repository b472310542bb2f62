"""Inspection and plotting tools: HiPPO reconstructions, kernels, token dynamics."""
