

def test_only_halo_strips_come_from_neighbouring_chunks():
    # On a cluster a task's inputs travel to it: a block takes its own input
    # chunk whole and only cut strips, never whole chunks, from its neighbours.
    x = da.zeros((2, 64, 64, 4), chunks=(1, 16, 16, 4), dtype=np.float32)
    y = adask.atrous_conv2d_transpose(x, np.zeros((3, 3, 4, 4), np.float32), 2, "SAME")
    graph = dict(y.__dask_graph__())
    for key in (k for k in graph if isinstance(k, tuple) and k[0] == y.name):
        deps = graph[key].dependencies
        whole = {d for d in deps if d[0] == x.name}
        assert whole == {(x.name,) + key[1:]}, (key, whole)
        cuts = [graph[d] for d in deps if d[0] != x.name and isinstance(d, tuple)]
        assert cuts and all(len(c.dependencies) == 1 for c in cuts)
