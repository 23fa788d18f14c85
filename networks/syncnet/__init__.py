"""The lip-sync experts: SyncNet v2 (syncnet_python's, the curation filter), LatentSync's StableSyncNet and
Wav2Lip's 5-frame expert, with `experts.py` choosing between the two trainable ones."""
