"""Routes other libraries' deformable attention through :mod:`cssformer_kernels`.

``cssformer_kernels.integrations.transformers``: Hugging Face ``transformers`` (imported only when that
module is). Nothing here is imported by ``import cssformer_kernels``.
"""
