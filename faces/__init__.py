"""Ground floor, above `media`: faces in decoded frames.

Landmark backends (dlib's 68 points, FAN), the tracker that follows one face through a shot, and the affine
alignment onto LatentSync's template. Curation (`stages.face`) and inference (`lipsync`) share all of it.
"""
