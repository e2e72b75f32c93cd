"""DUSt3R (``AsymmetricCroCo3DStereo``) pair-wise point-map regression, inference only.

Checkpoint-compatible port: module and parameter names equal the official ones, so
official ``.pth`` files and Hugging Face ``model.safetensors`` exports load strictly.

Public API::

    @dataclass
    class PairPrediction:
        pts3d_1: Tensor  # (B, H, W, 3) float32, view-1 points in view-1 camera frame
        conf_1: Tensor   # (B, H, W) float32, confidence > 1
        pts3d_2: Tensor  # (B, H, W, 3) float32, view-2 points in view-1 camera frame
        conf_2: Tensor   # (B, H, W) float32, confidence > 1

    class DUSt3R(nn.Module):
        def __init__(self, *, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                     dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
                     img_size=(512, 512), patch_size=16, mlp_ratio=4.0,
                     head_type="dpt", output_mode="pts3d",
                     depth_mode=("exp", -inf, inf), conf_mode=("exp", 1, inf),
                     pos_embed="RoPE100", norm_im2_in_dec=True,
                     feature_dim=256, last_dim=128, layer_dims=(96, 192, 384, 768))
        def forward(self, img1_pm1: Tensor, img2_pm1: Tensor) -> PairPrediction
            # images (B, 3, H, W) in [-1, 1], H and W multiples of 16

    PRESETS: dict[str, dict]   # "DUSt3R_ViTLarge_BaseDecoder_512_dpt" (default), "..._512_linear", "..._224_linear"
    DEFAULT_HUB_ID = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"

    def load_dust3r(source, *, device="cpu", dtype=torch.float32, head_dtype=None) -> DUSt3R
        # source: hub id ("naver/DUSt3R_..."), a preset name is NOT a source;
        #         a local folder with model.safetensors + config.json;
        #         a local official .pth file; or a dict of constructor kwargs (random weights).
        # Returns the model in eval mode with requires_grad False.
"""
