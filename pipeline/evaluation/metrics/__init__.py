"""The paper's evaluation metrics (section 4.1): Block-FID, Inception Score, CLIP-SIM and FVD.

fid.py             Fréchet distance and streaming float64 mean/covariance
blocks.py          Block-FID's 256x256 blocks at half-block stride
inception.py       Inception-v3 features/logits from pytorch-fid or torchvision weight files
inception_score.py IS from class probabilities
clip_sim.py        CLIP image-text cosine from a local transformers CLIP directory
i3d.py             I3D (pytorch-i3d layout) for FVD
media.py           listing and reading samples, reference sets and prompt sidecars
extract.py         streaming feature extraction into running statistics
reference.py       cached reference statistics (.npz under run_dir/eval/cache/)

The stage that puts them together is pipeline/evaluation/evaluate.py.
"""
