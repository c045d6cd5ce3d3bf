# Plume's build. `make demo` runs the quickstart pipeline; `make test` runs
# every test, integration tests included, installing what they need first.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
BIN      := bin/plume
# Packages are tested two at a time (2-core machines); integration suites
# share one server of each kind per test binary.
TESTFLAGS ?= -count=1 -p 2 -timeout 40m

.PHONY: all build test test-unit deps lint fmt demo bench clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/plume

# Installs PostgreSQL 15, MariaDB, kcat, Java, Maven (apt) and the Apache
# Kafka jars (Maven Central, cached in $${PLUME_CACHE:-~/.cache/plume}).
deps:
	bash scripts/install-test-deps.sh

test: deps lint
	CI=$${CI:-true} $(GO) test $(TESTFLAGS) ./...
	# Capture recycles Kafka records across goroutines: its packages run
	# again under the race detector. So do the MySQL tests of the binlog
	# reader's hand-off to the streamer (pooled packets, table maps shared
	# with the parser).
	CI=$${CI:-true} $(GO) test -race -count=1 ./pkg/event/ ./pkg/capture/
	CI=$${CI:-true} $(GO) test -race -count=1 -run 'TestDirectRowsMatchGoMySQL|TestPooledPacketsKeepValues|TestTypeMatrix' ./connectors/mysql/

# Unit tests only: skips suites that need servers.
test-unit:
	$(GO) test -short -count=1 ./...

lint:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	cd bench && $(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

demo: build
	bash scripts/demo.sh

bench: build deps
	bash bench/run.sh

clean:
	rm -rf bin data
