"""Build fastgen and its compiled extension fastgen._C.

C++ CPU kernels are always built. CUDA kernels are built when torch is a CUDA build and nvcc
is found; FASTGEN_BUILD_CUDA=0|1 forces them off or on. TORCH_CUDA_ARCH_LIST is honoured; the
default is 7.5 and newer (nvcc 13 refuses older architectures). Build without isolation:
    pip install --no-build-isolation -e .
"""
import glob
import os
import shutil
import sysconfig

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def _cuda_wanted():
    import torch
    from torch.utils import cpp_extension

    flag = os.environ.get("FASTGEN_BUILD_CUDA", "").strip()
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1" and not available:
        raise RuntimeError(
            "FASTGEN_BUILD_CUDA=1 but torch is not a CUDA build or nvcc was not found "
            f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})"
        )
    if flag == "0":
        return False
    return available


_CAPABILITY_FLAGS = {
    # at::vec's AVX-512 code, as torch compiles its own AVX512 kernels
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _cpu_capability_flags():
    """at::vec width for the CPU kernels: the widest the building machine has (a source build
    targets its machine; torch's own kernels pick AVX-512 at run time there too), AVX-512, else
    AVX2, else scalar. FASTGEN_CPU_CAPABILITY=default|avx2|avx512 overrides."""
    cap = os.environ.get("FASTGEN_CPU_CAPABILITY", "").strip().lower()
    if not cap:
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(f.read().split())
        except OSError:
            flags = set()
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
            cap = "avx512"
        elif {"avx2", "fma", "f16c"} <= flags:
            cap = "avx2"
        else:
            cap = "default"
    if cap not in _CAPABILITY_FLAGS:
        raise RuntimeError(f"FASTGEN_CPU_CAPABILITY must be one of {sorted(_CAPABILITY_FLAGS)}, got {cap!r}")
    return _CAPABILITY_FLAGS[cap]


def _nvidia_wheel_dirs():
    """include/ and lib/ of the pip-installed CUDA runtime (site-packages/nvidia/cu13)."""
    site = sysconfig.get_paths()["purelib"]
    incs, libs = [], []
    for base in sorted(glob.glob(os.path.join(site, "nvidia", "cu*"))):
        if os.path.isdir(os.path.join(base, "include")):
            incs.append(os.path.join(base, "include"))
        if os.path.isdir(os.path.join(base, "lib")):
            libs.append(os.path.join(base, "lib"))
    return incs, libs


def _cudart_dirs(cuda_home, wheel_libs):
    """Library folders for `-lcudart`: one holding an unversioned libcudart.so (the toolkit's),
    else a folder under build/ with a link to the pip wheel's libcudart.so.<major>."""
    candidates = [os.path.join(cuda_home, d) for d in ("lib64", "lib", "targets/x86_64-linux/lib")]
    candidates += ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"] + wheel_libs
    for d in candidates:
        if os.path.exists(os.path.join(d, "libcudart.so")):
            return wheel_libs + [d]
    for d in wheel_libs:
        found = sorted(glob.glob(os.path.join(d, "libcudart.so.*")))
        if found:
            link_dir = os.path.join(ROOT, "build", "cudart_link")
            os.makedirs(link_dir, exist_ok=True)
            link = os.path.join(link_dir, "libcudart.so")
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(found[0], link)
            return wheel_libs + [link_dir]
    raise RuntimeError("building the CUDA kernels needs libcudart: none found under "
                       f"{candidates}; set FASTGEN_BUILD_CUDA=0 to build the CPU kernels only")


def _extensions():
    from torch.utils import cpp_extension

    cpu_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    cxx = ["-O3", "-std=c++20", "-fopenmp"] + _cpu_capability_flags()
    extra = {"cxx": cxx}
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if _cuda_wanted():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        incs, libs = _nvidia_wheel_dirs()
        extra["cxx"] = cxx + ["-DFASTGEN_WITH_CUDA"]
        extra["nvcc"] = ["-O3", "-std=c++20", "-DFASTGEN_WITH_CUDA"]
        kwargs["include_dirs"] += incs
        kwargs["library_dirs"] = _cudart_dirs(cpp_extension.CUDA_HOME, libs)
        return [cpp_extension.CUDAExtension(
            "fastgen._C", cpu_sources + cuda_sources, extra_compile_args=extra, **kwargs)]
    return [cpp_extension.CppExtension(
        "fastgen._C", cpu_sources, extra_compile_args=extra, **kwargs)]


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


# fastgen/kernels is a link to the top-level kernels/, so the source tree imports as installed.
setup(
    packages=find_packages(include=["fastgen", "fastgen.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
)
