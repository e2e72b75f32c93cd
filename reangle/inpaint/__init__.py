"""Stage III: multi-view consistent inpainting of the start frames (paper Sec. 3.4, Alg. 2).

``flow``: sampler steps (ODE, the SDE with the ODE's marginals); ``search``: reward-guided
candidate selection; ``reward``: the MEt3R consistency reward.
"""
