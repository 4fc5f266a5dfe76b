

def test_sigterm_mid_write_removes_the_temporary(tmp_path):
    """The CLI turns SIGTERM (torchrun stopping the other workers, a scheduler) into an
    exception, so an interrupted write cleans up after itself."""
    target = tmp_path / "report.json"
    writer = textwrap.dedent(f"""
        import signal, time
        from parasnn.cli.main import _terminate
        from parasnn.io.files import atomic_path
        signal.signal(signal.SIGTERM, _terminate)
        with atomic_path({str(target)!r}) as temporary:
            temporary.write_text("partial")
            print("writing", flush=True)
            time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        process.kill()
    assert not target.exists() and _temporaries(target) == []
