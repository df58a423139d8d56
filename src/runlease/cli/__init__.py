def main() -> None:
    raise SystemExit("the CLI arrives with the socket issue")
