"""The registry of every weight file the project knows: the official FALCO bundle (the (URL, sha256) pairs of
chi0tzp/FALCO ``lib/config.py``, branch ``cvpr23``), the rosinality StyleGAN2 format, the evaluation networks, and
the weights shipped inside PyPI packages. One table of data; ``anon_core.model_store`` finds, fetches and
verifies what it lists.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REGISTRY", "Member", "ModelEntry"]


@dataclass(frozen=True)
class Member:
    """One file inside an archive entry that the project uses."""

    name: str  # what model_path()/require() accept, e.g. "stylegan2_ffhq1024"
    archive_path: str  # path inside the tar (a leading "./" is ignored)
    path: str  # where it lands, relative to the store
    profiles: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable artefact (a file or a tar) or one file shipped in a PyPI package."""

    name: str  # what `falco models fetch NAME` takes
    filename: str  # the downloaded file, relative to the store (an archive is deleted once unpacked)
    url: str | None  # direct download; None: only by hand from `page` (or a package install)
    sha256: str | None  # of the downloaded file, where its publisher states it
    source: str  # who publishes it, what it is, licence
    page: str = ""  # where a person finds it (README, release page)
    profiles: tuple[str, ...] = ()  # profiles / uses that need it ("all": every profile)
    members: tuple[Member, ...] = ()  # non-empty: a tar, unpacked into the store
    sha256_prefix: str | None = None  # only leading hex digits are published (torch.hub file-name convention)
    sha256_note: str = ""  # where the sha256 comes from, or why there is none
    size: int | None = None  # bytes of the download, where published
    package: tuple[str, str, str] | None = None  # (distribution, file inside it, pip command): not fetched

    @property
    def is_archive(self) -> bool:
        return bool(self.members)


_FALCO = "https://github.com/chi0tzp/FALCO/tree/cvpr23"
_FALCO_SHA = "published in chi0tzp/FALCO lib/config.py (cvpr23)"
_TOFU_NOTE = "sha256 not published: recorded on first fetch (.sha256-tofu.json)"
_MTCNN = "facenet-pytorch==2.6.0 wheel (MIT): MTCNN weights (the package is never imported)"
_DLIB_PKG = "face-recognition-models==0.3.0 (CC0)"
_DLIB_PIP = "pip install face-recognition-models==0.3.0"
_MTCNN_PIP = "pip install --no-deps facenet-pytorch==2.6.0"
_RECORD_NOTE = "checked against the sha256 pip recorded at install (the package's RECORD)"

REGISTRY: tuple[ModelEntry, ...] = (
    # ---- the official FALCO bundle (Dropbox links of lib/config.py; unpack as download_models.py does) ----
    ModelEntry(
        "genforce", "genforce.tar",
        "https://www.dropbox.com/scl/fi/yec5wgg8j388fc0saigbj/genforce.tar?rlkey=kkhkkxvnc985746ichtdyct3f&dl=1",
        "63284b4f4ffeac38037061fd175c462afff82bbe570ed80092720a724a67a6dc",
        "FALCO authors' bundle: GenForce ports of NVIDIA's StyleGAN2 config-f FFHQ generators (checkpoints hold "
        "`generator_smooth`/`generator`; NVIDIA's weights are for non-commercial use)",
        _FALCO, ("ffhq1024", "ffhq512"),
        (Member("stylegan2_ffhq1024", "genforce/stylegan2_ffhq1024.pth", "genforce/stylegan2_ffhq1024.pth",
                ("ffhq1024",)),
         Member("stylegan2_ffhq512", "genforce/stylegan2_ffhq512.pth", "genforce/stylegan2_ffhq512.pth",
                ("ffhq512",))),
        sha256_note=_FALCO_SHA,
    ),
    ModelEntry(
        "e4e", "e4e.tar", "https://www.dropbox.com/s/1jujsdr6ytzilym/e4e.tar?dl=1",
        "b4a95155f2bebbb229b7dfc914fe937753b9a5b8de9a837875f9fbcacf8bb287",
        "FALCO authors' bundle: e4e FFHQ encoder (omertov/encoder4editing, MIT), its IR-SE50 backbone and dlib's "
        "68-point predictor used by the official aligner (iBUG 300-W: non-commercial)",
        _FALCO, ("ffhq1024", "ffhq512"),
        (Member("e4e_ffhq_encode", "e4e/e4e_ffhq_encode.pt", "e4e/e4e_ffhq_encode.pt", ("ffhq1024", "ffhq512")),
         Member("e4e_ir_se50", "e4e/model_ir_se50.pth", "e4e/model_ir_se50.pth", note="e4e training backbone"),
         Member("e4e_shape_predictor_68", "e4e/shape_predictor_68_face_landmarks.dat",
                "e4e/shape_predictor_68_face_landmarks.dat", note="official aligner's landmarks")),
        sha256_note=_FALCO_SHA,
    ),
    ModelEntry(
        "farl", "farl.tar", "https://www.dropbox.com/s/xxhmvo3q7avlcac/farl.tar?dl=1",
        "1d67cc6fd3cea9fdd7ec6af812a32e6b02374162d02137dd80827283d496b2d8",
        "FALCO authors' bundle: FaRL ViT-B/16 pre-trained on LAION-Face (FacePerceiver/FaRL); weights under "
        "the `state_dict` key; the official code uses epoch 64",
        _FALCO, ("ffhq1024", "ffhq512"),
        (Member("farl_ep64", "farl/FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
                "farl/FaRL-Base-Patch16-LAIONFace20M-ep64.pth", ("ffhq1024", "ffhq512")),
         Member("farl_ep16", "farl/FaRL-Base-Patch16-LAIONFace20M-ep16.pth",
                "farl/FaRL-Base-Patch16-LAIONFace20M-ep16.pth")),
        sha256_note=_FALCO_SHA,
    ),
    ModelEntry(
        "arcface", "arcface.tar", "https://www.dropbox.com/s/idulblr8pdrmbq1/arcface.tar?dl=1",
        "edd5854cacd86c17a78a11f70ab8c49bceffefb90ee070754288fa7ceadcdfb2",
        "FALCO authors' bundle: ArcFace IR-SE50 (TreB1eN/InsightFace_Pytorch layout, as used by pSp/e4e)",
        _FALCO, ("ffhq1024", "ffhq512"),
        (Member("arcface_ir_se50", "arcface/model_ir_se50.pth", "arcface/model_ir_se50.pth",
                ("ffhq1024", "ffhq512")),),
        sha256_note=_FALCO_SHA,
    ),
    ModelEntry(
        "sfd", "sfd.tar",
        "https://www.dropbox.com/scl/fi/eo6c8prmvuhpvpx7sh4u8/sfd.tar?rlkey=7bpo0kxennilgz2kglwpgozy5&dl=1",
        "2bea5f1c10110e356eef3f4efd45169100b9c7704eb6e6abd309df58f34452d4",
        "FALCO authors' bundle: S3FD face detector of the official aligner (1adrianb/face-alignment, BSD-3)",
        _FALCO, ("official-aligner",),
        (Member("s3fd", "sfd/s3fd-619a316812.pth", "sfd/s3fd-619a316812.pth", ("official-aligner",)),),
        sha256_note=_FALCO_SHA,
    ),
    # ---- the other common generator format ----
    ModelEntry(
        "stylegan2-ffhq-config-f", "stylegan2-ffhq-config-f.pt",
        "https://drive.usercontent.google.com/download?id=1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT&export=download&confirm=t",
        None,
        "rosinality/stylegan2-pytorch conversion of NVIDIA's StyleGAN2 FFHQ config-f (1024 px, `g_ema` key), the "
        "decoder e4e uses; Google Drive link of omertov/encoder4editing's README (non-commercial NVIDIA weights)",
        "https://github.com/omertov/encoder4editing#pretrained-models", ("ffhq1024-rosinality",),
        sha256_note=_TOFU_NOTE + "; Google Drive may answer with a web page instead of the file",
    ),
    # ---- evaluation networks (DESIGN.md section 5) ----
    ModelEntry(
        "facenet-vggface2", "20180402-114759-vggface2.pt",
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
        None, "facenet-pytorch (MIT) InceptionResnetV1 trained on VGGFace2, LFW 0.9965; flat state dict",
        "https://github.com/timesler/facenet-pytorch/releases/tag/v2.2.9", ("evaluation",), sha256_note=_TOFU_NOTE,
    ),
    ModelEntry(
        "facenet-casia-webface", "20180408-102900-casia-webface.pt",
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
        None, "facenet-pytorch (MIT) InceptionResnetV1 trained on CASIA-WebFace, LFW 0.9905; flat state dict",
        "https://github.com/timesler/facenet-pytorch/releases/tag/v2.2.9", ("evaluation",), sha256_note=_TOFU_NOTE,
    ),
    ModelEntry(
        "anycost-attribute-predictor", "attribute_predictor.pt",
        "https://hanlab18.mit.edu/projects/anycost-gan/files/attribute_predictor.pt", None,
        "Anycost GAN CelebA 40-attribute ResNet-50 (mit-han-lab/anycost-gan models/__init__.py URL_TEMPLATE; "
        "older copies use hanlab.mit.edu; the hosted file has gone missing at times); `state_dict` key",
        "https://github.com/mit-han-lab/anycost-gan", ("evaluation",), sha256_note=_TOFU_NOTE,
    ),
    ModelEntry(
        "talk-to-edit-predictor-128", "predictor_128.pth.tar", None, None,
        "Talk-to-Edit attribute predictor, 128 px (yumingj/Talk-to-Edit, download/pretrained_models/); a torch "
        "checkpoint despite the .tar name, `state_dict` key; only a Google Drive folder is published",
        "https://drive.google.com/drive/folders/1W9dvjz8bUolEIG524o8ZvM62uEWKJ5do", ("evaluation",),
        sha256_note=_TOFU_NOTE,
    ),
    ModelEntry(
        "talk-to-edit-eval-predictor", "eval_predictor.pth.tar", None, None,
        "Talk-to-Edit evaluation attribute predictor (yumingj/Talk-to-Edit, download/pretrained_models/); a torch "
        "checkpoint despite the .tar name, `state_dict` key; only a Google Drive folder is published",
        "https://drive.google.com/drive/folders/1W9dvjz8bUolEIG524o8ZvM62uEWKJ5do", ("evaluation",),
        sha256_note=_TOFU_NOTE,
    ),
    ModelEntry(
        "fid-inception", "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        None, "pytorch-fid (Apache-2.0) port of TensorFlow's FID Inception (src/pytorch_fid/inception.py)",
        "https://github.com/mseitzer/pytorch-fid", ("evaluation",), sha256_prefix="6726825d",
        sha256_note="only a prefix is published: the file name carries the first 8 hex digits of its sha256 "
                    "(torch.hub convention), checked on fetch; the full digest is recorded on first fetch",
    ),
    # ---- installed by pip (offline); checked against the sha256 pip recorded in the package's RECORD ----
    ModelEntry(
        "dlib-face-descriptor", "dlib_face_recognition_resnet_model_v1.dat", None, None,
        f"{_DLIB_PKG}: dlib's 128-d face descriptor ResNet (our PyTorch port loads it)",
        "https://pypi.org/project/face-recognition-models/", ("all",),
        package=("face-recognition-models", "face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                 _DLIB_PIP),
        sha256_note=_RECORD_NOTE,
    ),
    ModelEntry(
        "dlib-shape-predictor-5", "shape_predictor_5_face_landmarks.dat", None, None,
        f"{_DLIB_PKG}: dlib's 5-point landmarks (face alignment)",
        "https://pypi.org/project/face-recognition-models/", ("all",),
        package=("face-recognition-models", "face_recognition_models/models/shape_predictor_5_face_landmarks.dat",
                 _DLIB_PIP),
        sha256_note=_RECORD_NOTE,
    ),
    *(
        ModelEntry(
            f"mtcnn-{net}", f"{net}.pt", None, None, _MTCNN, "https://pypi.org/project/facenet-pytorch/", ("all",),
            package=("facenet-pytorch", f"facenet_pytorch/data/{net}.pt", _MTCNN_PIP), sha256_note=_RECORD_NOTE,
        )
        for net in ("pnet", "rnet", "onet")
    ),
)
