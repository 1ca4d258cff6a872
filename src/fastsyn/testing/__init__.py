"""Test helpers that ship with fastsyn so an installed copy can be checked.

dipy_patch_plugin
    pytest plugin that runs a whole session with :func:`fastsyn.patch_dipy`
    active, e.g. DIPY's own ``dipy.align`` tests as a contract.
"""
