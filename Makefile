# Thin wrappers over dev.sh (which creates .venv and installs the project on first use).
# Extra arguments: make bench ARGS="--quick", make test ARGS="-k websocket".
.PHONY: bench soak test run

bench:
	./dev.sh bench $(ARGS)

soak:
	./dev.sh soak $(ARGS)

test:
	./dev.sh test $(ARGS)

run:
	./dev.sh run $(ARGS)
