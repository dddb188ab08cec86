/*
 * Beam's Flink job server (FlinkJobServerDriver) for a cluster that has Beam's
 * runner jars on its own classpath, as scripts/flink.sh's cluster does: it
 * submits jobs without staging any jar.
 *
 * Why: Beam's FlinkJobInvoker stages the job server's whole classpath with
 * every job (PipelineResources.detectClassPathResourcesToStage): 162 jars,
 * 152 MB here. On this project's 2-core test machine a job spent 12 s in the
 * REST submission of those jars and ~4 s more while the TaskManagers fetched
 * them from the JobManager's blob server, for jobs that then ran 5-15 s.
 *
 * In Beam's package because the server configuration's Flink settings
 * (getFlinkMaster, getFlinkConfDir) are package-private. Compiled by
 * scripts/flink.sh against the pinned Beam 2.62.0 jars.
 */
package org.apache.beam.runners.flink;

import java.util.Collections;
import java.util.UUID;
import org.apache.beam.model.pipeline.v1.RunnerApi;
import org.apache.beam.runners.jobsubmission.JobInvocation;
import org.apache.beam.sdk.extensions.gcp.options.GcsOptions;
import org.apache.beam.sdk.io.FileSystems;
import org.apache.beam.sdk.options.PipelineOptions;
import org.apache.beam.sdk.options.PipelineOptionsFactory;
import org.apache.beam.sdk.options.PortablePipelineOptions;
import org.apache.beam.sdk.util.construction.PipelineOptionsTranslation;
import org.apache.beam.vendor.grpc.v1p60p1.com.google.protobuf.Struct;
import org.apache.beam.vendor.guava.v32_1_2_jre.com.google.common.util.concurrent.ListeningExecutorService;

public final class NoStagingFlinkJobServer {

  private NoStagingFlinkJobServer() {}

  /** FlinkJobServerDriver.main, with an invoker that stages nothing. */
  public static void main(String[] args) throws Exception {
    PipelineOptions options = PipelineOptionsFactory.create();
    options.as(GcsOptions.class).setGcsUploadBufferSizeBytes(1024 * 1024);
    FileSystems.setDefaultPipelineOptions(options);
    FlinkJobServerDriver.FlinkServerConfiguration configuration = FlinkJobServerDriver.parseArgs(args);
    FlinkJobServerDriver.fromConfig(configuration, () -> new Invoker(configuration)).run();
  }

  /** FlinkJobInvoker.invokeWithExecutor without the classpath scan and its jars to stage. */
  static final class Invoker extends FlinkJobInvoker {
    private final FlinkJobServerDriver.FlinkServerConfiguration configuration;

    Invoker(FlinkJobServerDriver.FlinkServerConfiguration configuration) {
      super(configuration);
      this.configuration = configuration;
    }

    @Override
    protected JobInvocation invokeWithExecutor(
        RunnerApi.Pipeline pipeline,
        Struct options,
        String retrievalToken,
        ListeningExecutorService executorService) {
      FlinkPipelineOptions flinkOptions =
          PipelineOptionsTranslation.fromProto(options).as(FlinkPipelineOptions.class);
      String outputExecutablePath =
          flinkOptions.as(PortablePipelineOptions.class).getOutputExecutablePath();
      if (outputExecutablePath != null && !outputExecutablePath.isEmpty()) {
        // A jar of the pipeline must carry Beam's classes: Beam's own invoker writes it.
        return super.invokeWithExecutor(pipeline, options, retrievalToken, executorService);
      }
      String invocationId = String.format("%s_%s", flinkOptions.getJobName(), UUID.randomUUID());
      if (FlinkPipelineOptions.AUTO.equals(flinkOptions.getFlinkMaster())) {
        flinkOptions.setFlinkMaster(configuration.getFlinkMaster());
      }
      FlinkPipelineRunner runner =
          new FlinkPipelineRunner(
              flinkOptions, configuration.getFlinkConfDir(), Collections.emptyList());
      flinkOptions.setRunner(null);
      return createJobInvocation(
          invocationId, retrievalToken, executorService, pipeline, flinkOptions, runner);
    }
  }
}
