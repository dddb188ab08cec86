#!/usr/bin/env bash
# Installs a single-node OpenSearch under .cache/opensearch/ from Maven Central
# jars (there is no Docker here and OpenSearch's tarball is not on a package
# registry). Idempotent: a finished install is left alone.
#
# Usage: scripts/install_opensearch.sh   # prints the install's home directory
#
# What it builds, the way OpenSearch's tarball lays it out:
#   lib/                       core jars (org.opensearch:opensearch and its runtime dependencies)
#   modules/transport-netty4/  the HTTP/transport module (plus netty), with the
#                              descriptor and security policy the tarball generates
#   config/                    opensearch.yml written by scripts/services.d/opensearch.sh at start
# Gaps against the tarball: only the transport-netty4 module (no painless
# scripting, no ingest pipelines, no analysis plugins, no security plugin);
# search, point in time, sliced scroll and bulk indexing are all core.
set -euo pipefail

OPENSEARCH_VERSION="${OPENSEARCH_VERSION:-2.19.3}"
LOG4J_VERSION=2.21.0
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${REPO_ROOT}/.cache/opensearch/${OPENSEARCH_VERSION}"
MARKER="${HOME_DIR}/.installed"

if [[ -f "${MARKER}" ]]; then
  echo "${HOME_DIR}"
  exit 0
fi

command -v mvn >/dev/null || { echo "install_opensearch.sh: mvn (Maven) is required" >&2; exit 2; }
command -v java >/dev/null || { echo "install_opensearch.sh: java (17+) is required" >&2; exit 2; }

work="$(mktemp -d "${REPO_ROOT}/.cache/opensearch-install.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
cat >"${work}/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.music-beam</groupId><artifactId>opensearch-node</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.opensearch</groupId><artifactId>opensearch</artifactId><version>${OPENSEARCH_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.opensearch.plugin</groupId><artifactId>transport-netty4-client</artifactId><version>${OPENSEARCH_VERSION}</version></dependency>
  </dependencies>
</project>
POM
# -C: fail on a checksum mismatch instead of warning.
mvn -B -q -C -f "${work}/pom.xml" dependency:copy-dependencies -DoutputDirectory="${work}/jars" >&2

mkdir -p "${work}/home/lib" "${work}/home/modules/transport-netty4" "${work}/home/config" "${work}/home/plugins"
for jar in "${work}"/jars/*.jar; do
  case "$(basename "${jar}")" in
    # The module's own jars must not also be on the core class path (OpenSearch's jar-hell check).
    netty-*|transport-netty4-client-*) mv "${jar}" "${work}/home/modules/transport-netty4/" ;;
    *) mv "${jar}" "${work}/home/lib/" ;;
  esac
done
# org.opensearch:opensearch-plugin-classloader is part of the tarball but not
# published to Maven Central: its one class (Apache-2.0, libs/plugin-classloader
# in OpenSearch's source) is rebuilt here. The jar keeps its name because
# OpenSearch's security policy grants it createClassLoader by that name.
mkdir -p "${work}/classloader/org/opensearch/plugins"
cat >"${work}/classloader/org/opensearch/plugins/ExtendedPluginsClassLoader.java" <<'JAVA'
package org.opensearch.plugins;

import java.security.AccessController;
import java.security.PrivilegedAction;
import java.util.Collections;
import java.util.List;

/** A class loader that looks in the loaders of the plugins a plugin extends. */
public class ExtendedPluginsClassLoader extends ClassLoader {
  private final List<ClassLoader> extendedLoaders;

  private ExtendedPluginsClassLoader(ClassLoader parent, List<ClassLoader> extendedLoaders) {
    super(parent);
    this.extendedLoaders = Collections.unmodifiableList(extendedLoaders);
  }

  @Override
  protected Class<?> findClass(String name) throws ClassNotFoundException {
    for (ClassLoader loader : extendedLoaders) {
      try {
        return loader.loadClass(name);
      } catch (ClassNotFoundException e) {
        // try the next one
      }
    }
    throw new ClassNotFoundException(name);
  }

  public static ExtendedPluginsClassLoader create(ClassLoader parent, List<ClassLoader> extendedLoaders) {
    return AccessController.doPrivileged(
        (PrivilegedAction<ExtendedPluginsClassLoader>) () -> new ExtendedPluginsClassLoader(parent, extendedLoaders));
  }
}
JAVA
javac -nowarn --release 11 -d "${work}/classloader/classes" "${work}/classloader/org/opensearch/plugins/ExtendedPluginsClassLoader.java" 2>/dev/null
jar cf "${work}/home/lib/opensearch-plugin-classloader-${OPENSEARCH_VERSION}.jar" -C "${work}/classloader/classes" .

cat >"${work}/home/modules/transport-netty4/plugin-descriptor.properties" <<DESC
description=Netty 4 based transport implementation
version=${OPENSEARCH_VERSION}
name=transport-netty4
classname=org.opensearch.transport.Netty4Plugin
java.version=11
opensearch.version=${OPENSEARCH_VERSION}
extended.plugins=
has.native.controller=false
DESC
# The permissions OpenSearch's own build grants this module.
cat >"${work}/home/modules/transport-netty4/plugin-security.policy" <<'POLICY'
grant codeBase "${codebase.netty-common}" {
  permission java.lang.RuntimePermission "setContextClassLoader";
};
grant codeBase "${codebase.netty-transport}" {
  permission java.lang.RuntimePermission "setContextClassLoader";
};
grant {
  permission java.lang.RuntimePermission "accessDeclaredMembers";
  permission java.lang.reflect.ReflectPermission "suppressAccessChecks";
  permission java.lang.RuntimePermission "accessClassInPackage.sun.misc";
  permission java.lang.RuntimePermission "accessClassInPackage.sun.nio.ch";
  permission java.net.SocketPermission "*", "accept,connect";
};
POLICY
cat >"${work}/home/config/log4j2.properties" <<'LOG'
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %marker%m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
LOG

rm -rf "${HOME_DIR}"
mkdir -p "$(dirname "${HOME_DIR}")"
mv "${work}/home" "${HOME_DIR}"
touch "${MARKER}"
echo "${HOME_DIR}"
