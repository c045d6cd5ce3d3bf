// Package helmtest tests the deployment artefacts in deploy/: the Helm chart
// in deploy/helm/plume (lint, rendering with the default values and every
// example, strict decoding of each manifest into the Kubernetes API types,
// the pipeline it renders parsed by Plume's own config parser) and the
// container image definition in deploy/docker.
//
// The tests run a Helm built from source at a pinned version (helmVersion),
// built once and cached in $PLUME_CACHE (default: the user cache directory's
// plume/) so that only the first run pays for the build; PLUME_HELM names a
// helm binary to use instead.
package helmtest
