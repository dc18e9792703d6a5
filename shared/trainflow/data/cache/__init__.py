"""Caches that build_cache writes once and training reads many times: supervised HDF5 shards and text-to-image latents."""
