package bootseer;

import java.io.BufferedReader;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import org.apache.hadoop.hdfs.server.datanode.DataNode;

/**
 * A real HDFS for bootseer's tests and benchmarks: Hadoop's MiniDFSCluster driven over stdin.
 *
 * <p>Usage: {@code MiniDfs --base-dir DIR --conf-dir DIR [--datanodes N] [--block-size BYTES]
 * [--replication R] [--bind-host HOST]}. Everything listens on 127.0.0.1 with ephemeral ports;
 * with {@code --bind-host HOST} (an address of this host) the NameNode RPC and DataNode transfer
 * ports listen on every address, the URI and the DataNodes' host names are HOST, and the client
 * configuration sets {@code dfs.client.use.datanode.hostname}, so that clients in other network
 * namespaces reach the cluster through HOST. Once the cluster is
 * up, the client configuration ({@code core-site.xml}, {@code hdfs-site.xml}) is in the conf dir
 * and stdout carries one {@code DATANODE <i> <host>:<xferPort>} line per DataNode followed by
 * exactly one {@code READY <hdfs-uri> <conf-dir>} line. Then each stdin line is one command,
 * answered by one {@code OK <cmd>} or {@code ERR <message>} line:
 *
 * <ul>
 *   <li>{@code stop-datanode I}: stops DataNode I (stable numbering from the DATANODE lines);
 *   <li>{@code restart-datanode I}: starts DataNode I again on the same ports (stopping it first
 *       if it runs) and waits until it serves;
 *   <li>{@code restart-namenode}: restarts the NameNode on the same port and waits until it is
 *       active and out of safe mode;
 *   <li>{@code quit}, or EOF on stdin: shuts the cluster down and exits.
 * </ul>
 *
 * <p>stdout is reserved for that protocol: Hadoop's and our logs go to stderr, and System.out is
 * redirected there too so nothing else can break a line the parent parses.
 */
public final class MiniDfs {
  /** How long a restarted DataNode gets to come up before the command answers ERR. */
  private static final long DATANODE_START_TIMEOUT_MS = 60_000;

  private final MiniDFSCluster cluster;
  private final PrintStream protocol;
  /** DataNode state by stable index: the running node, or the properties of a stopped one. */
  private final List<DataNode> running = new ArrayList<>();
  private final List<MiniDFSCluster.DataNodeProperties> stopped = new ArrayList<>();
  private boolean down;

  private MiniDfs(MiniDFSCluster cluster, PrintStream protocol) {
    this.cluster = cluster;
    this.protocol = protocol;
    for (DataNode dn : cluster.getDataNodes()) {
      running.add(dn);
      stopped.add(null);
    }
  }

  public static void main(String[] args) throws Exception {
    // The protocol owns the real stdout; everything else printed to System.out goes to stderr.
    PrintStream protocol =
        new PrintStream(new FileOutputStream(java.io.FileDescriptor.out), true, "UTF-8");
    System.setOut(System.err);

    int datanodes = 3;
    long blockSize = 1L << 20;
    int replication = -1;
    String baseDir = null;
    String confDir = null;
    String bindHost = null;
    for (int i = 0; i < args.length; i++) {
      String value = i + 1 < args.length ? args[i + 1] : null;
      switch (args[i]) {
        case "--datanodes" -> datanodes = Integer.parseInt(required(args[i], value));
        case "--block-size" -> blockSize = Long.parseLong(required(args[i], value));
        case "--replication" -> replication = Integer.parseInt(required(args[i], value));
        case "--base-dir" -> baseDir = required(args[i], value);
        case "--conf-dir" -> confDir = required(args[i], value);
        case "--bind-host" -> bindHost = required(args[i], value);
        default -> usage("unknown argument " + args[i]);
      }
      i++;
    }
    if (baseDir == null || confDir == null) {
      usage("--base-dir and --conf-dir are required");
    }
    if (datanodes < 1) {
      usage("--datanodes must be at least 1");
    }
    // HDFS checksums every 512 bytes; a block must hold whole checksum chunks.
    if (blockSize < 512 || blockSize % 512 != 0) {
      usage("--block-size must be a positive multiple of 512");
    }
    if (replication < 0) {
      replication = Math.min(3, datanodes);
    }
    if (replication < 1 || replication > datanodes) {
      usage("--replication must be between 1 and --datanodes");
    }

    long started = System.nanoTime();
    Configuration conf = new Configuration();
    conf.setLong("dfs.blocksize", blockSize);
    // The NameNode refuses blocks under 1 MiB by default; tests use smaller ones.
    conf.setLong("dfs.namenode.fs-limits.min-block-size", 0);
    conf.setInt("dfs.replication", replication);
    conf.setBoolean("dfs.permissions.enabled", false);
    // A tiny cluster has no spare DataNode to replace a failed one in a write pipeline.
    conf.setBoolean("dfs.client.block.write.replace-datanode-on-failure.enable", false);
    // Keep a restarted NameNode's safe mode short: all blocks are reported within seconds.
    conf.setInt("dfs.namenode.safemode.extension", 0);
    File base = new File(baseDir);
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());

    MiniDFSCluster.Builder builder =
        new MiniDFSCluster.Builder(conf, base)
            .numDataNodes(datanodes)
            .nameNodePort(0)
            .nameNodeHttpPort(0)
            .format(true);
    if (bindHost != null) {
      // MiniDFSCluster pins its addresses to 127.0.0.1; the bind-host key and a configured
      // DataNode address (checkDataNodeAddrConfig) open them to every interface, and the host
      // names make the NameNode hand out HOST to clients that use DataNode host names.
      conf.set("dfs.namenode.rpc-bind-host", "0.0.0.0");
      conf.set("dfs.datanode.address", "0.0.0.0:0");
      // With checkDataNodeAddrConfig the other DataNode ports come from the configuration,
      // whose defaults are fixed ports: keep them ephemeral and local.
      conf.set("dfs.datanode.http.address", "127.0.0.1:0");
      conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
      String[] hosts = new String[datanodes];
      java.util.Arrays.fill(hosts, bindHost);
      builder.checkDataNodeAddrConfig(true).hosts(hosts);
    }
    MiniDFSCluster cluster = builder.build();
    cluster.waitActive();

    MiniDfs dfs = new MiniDfs(cluster, protocol);
    Runtime.getRuntime().addShutdownHook(new Thread(dfs::shutdown, "minidfs-shutdown"));
    String uri =
        "hdfs://" + (bindHost != null ? bindHost : "127.0.0.1") + ":" + cluster.getNameNodePort();
    File conf_ = new File(confDir);
    writeClientConfig(conf_, uri, blockSize, replication, bindHost != null);
    System.err.printf(
        "minidfs: %d DataNodes up at %s in %d ms%n",
        datanodes, uri, (System.nanoTime() - started) / 1_000_000);
    for (int i = 0; i < dfs.running.size(); i++) {
      protocol.println("DATANODE " + i + " " + xferAddr(dfs.running.get(i)));
    }
    protocol.println("READY " + uri + " " + conf_.getAbsolutePath());
    dfs.serve();
    System.exit(0);
  }

  private static String required(String flag, String value) {
    if (value == null) {
      usage(flag + " needs a value");
    }
    return value;
  }

  private static void usage(String why) {
    System.err.println("minidfs: " + why);
    System.err.println(
        "usage: MiniDfs --base-dir DIR --conf-dir DIR [--datanodes N] [--block-size BYTES]"
            + " [--replication R] [--bind-host HOST]");
    System.exit(2);
  }

  private static String xferAddr(DataNode dn) {
    return dn.getDatanodeId().getIpAddr() + ":" + dn.getXferPort();
  }

  /** Reads commands until `quit` or EOF, then shuts down. */
  private void serve() throws IOException {
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      String cmd = line.trim();
      if (cmd.isEmpty()) {
        continue;
      }
      if (cmd.equals("quit")) {
        shutdown();
        protocol.println("OK quit");
        return;
      }
      try {
        handle(cmd);
        protocol.println("OK " + cmd);
      } catch (Exception e) {
        e.printStackTrace(System.err);
        String message = String.valueOf(e.getMessage()).replace('\n', ' ');
        protocol.println("ERR " + cmd + ": " + message);
      }
    }
    shutdown();
  }

  private void handle(String cmd) throws Exception {
    String[] words = cmd.split("\\s+");
    switch (words[0]) {
      case "stop-datanode" -> stopDataNode(index(words));
      case "restart-datanode" -> restartDataNode(index(words));
      case "restart-namenode" -> {
        int port = cluster.getNameNodePort();
        cluster.restartNameNode(true);
        cluster.waitActive();
        // Clients hold the URI from READY; a NameNode on another port would strand them.
        if (cluster.getNameNodePort() != port) {
          throw new IOException(
              "NameNode came back on port " + cluster.getNameNodePort() + ", not " + port);
        }
      }
      default -> throw new IllegalArgumentException("unknown command " + words[0]);
    }
  }

  private int index(String[] words) {
    if (words.length != 2) {
      throw new IllegalArgumentException("expected one DataNode index");
    }
    int i = Integer.parseInt(words[1]);
    if (i < 0 || i >= running.size()) {
      throw new IllegalArgumentException("no DataNode " + i);
    }
    return i;
  }

  /** The cluster renumbers its DataNodes when one stops; find ours by identity. */
  private int clusterIndex(DataNode dn) {
    List<DataNode> nodes = cluster.getDataNodes();
    for (int j = 0; j < nodes.size(); j++) {
      if (nodes.get(j) == dn) {
        return j;
      }
    }
    throw new IllegalStateException("DataNode is not part of the cluster");
  }

  private void stopDataNode(int i) {
    DataNode dn = running.get(i);
    if (dn == null) {
      throw new IllegalStateException("DataNode " + i + " is already stopped");
    }
    MiniDFSCluster.DataNodeProperties props = cluster.stopDataNode(clusterIndex(dn));
    running.set(i, null);
    stopped.set(i, props);
    System.err.println("minidfs: stopped DataNode " + i);
  }

  private void restartDataNode(int i) throws Exception {
    if (running.get(i) != null) {
      stopDataNode(i);
    }
    MiniDFSCluster.DataNodeProperties props = stopped.get(i);
    if (!cluster.restartDataNode(props, true)) {
      throw new IOException("DataNode " + i + " did not restart");
    }
    List<DataNode> nodes = cluster.getDataNodes();
    DataNode dn = nodes.get(nodes.size() - 1); // restartDataNode appends the new node
    running.set(i, dn);
    stopped.set(i, null);
    long deadline = System.currentTimeMillis() + DATANODE_START_TIMEOUT_MS;
    while (!dn.isDatanodeFullyStarted()) {
      if (System.currentTimeMillis() > deadline) {
        throw new IOException("DataNode " + i + " did not start within 60 s");
      }
      Thread.sleep(50);
    }
    System.err.println("minidfs: restarted DataNode " + i + " at " + xferAddr(dn));
  }

  private synchronized void shutdown() {
    if (down) {
      return;
    }
    down = true;
    try {
      cluster.shutdown(true);
    } catch (Exception e) {
      e.printStackTrace(System.err);
    }
  }

  private static void writeClientConfig(
      File dir, String uri, long blockSize, int replication, boolean useHostnames)
      throws IOException {
    if (!dir.isDirectory() && !dir.mkdirs()) {
      throw new IOException("cannot create " + dir);
    }
    writeXml(new File(dir, "core-site.xml"), new String[][] {{"fs.defaultFS", uri}});
    writeXml(
        new File(dir, "hdfs-site.xml"),
        new String[][] {
          {"dfs.blocksize", Long.toString(blockSize)},
          {"dfs.replication", Integer.toString(replication)},
          {"dfs.client.block.write.replace-datanode-on-failure.enable", "false"},
          {"dfs.client.use.datanode.hostname", Boolean.toString(useHostnames)},
        });
  }

  private static void writeXml(File file, String[][] properties) throws IOException {
    StringBuilder xml = new StringBuilder();
    xml.append("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<configuration>\n");
    for (String[] p : properties) {
      xml.append("  <property><name>")
          .append(p[0])
          .append("</name><value>")
          .append(p[1])
          .append("</value></property>\n");
    }
    xml.append("</configuration>\n");
    File tmp = new File(file.getPath() + ".tmp");
    try (OutputStream out = new FileOutputStream(tmp)) {
      out.write(xml.toString().getBytes(StandardCharsets.UTF_8));
    }
    if (!tmp.renameTo(file)) {
      throw new IOException("cannot rename " + tmp + " to " + file);
    }
  }
}
