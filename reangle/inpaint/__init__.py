"""Stage III: multi-view consistent inpainting of the start frames (paper Sec. 3.4, Alg. 2).

``flow``: sampler steps in diffusers' convention (ODE; the SDE with the ODE's marginals);
``search``: reward-guided candidate selection, the first-pair search, splitting over ranks;
``reward``: the MEt3R consistency reward with its overlap guard; ``inpainter``: the
inpainting-model seam and FLUX + the inpainting ControlNet; ``multiview``: the loop over
views; ``run``: stage III from a config (models, Omega views, files); ``python -m
reangle.inpaint``: the command line.
"""
