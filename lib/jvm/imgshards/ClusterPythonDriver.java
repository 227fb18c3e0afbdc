package imgshards;

import java.io.File;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.FileUtil;
import org.apache.hadoop.fs.Path;
import org.apache.spark.SparkConf;
import org.apache.spark.deploy.PythonRunner;
import org.apache.spark.deploy.SparkHadoopUtil;

/**
 * Runs a job's Python driver on a standalone worker (spark-submit --deploy-mode cluster).
 *
 * <p>Spark's standalone master refuses Python applications in cluster deploy mode, and its workers hand a
 * driver nothing but the application jar: the packed environment in spark.archives reaches a driver only
 * once its SparkContext starts, which is after its Python has to exist. This jar is the application:
 * its main fetches the archive named "#environment" in spark.archives (any Hadoop URL: file, hdfs, s3a),
 * unpacks it into the driver's working directory as ./environment, and hands over to Spark's own
 * PythonRunner with ./environment/bin/python running the job's console script from that environment.
 *
 * <p>Arguments: the console script (e.g. imgshards-pipeline), then the job's arguments.
 */
public final class ClusterPythonDriver {
    private static final String ENV_FRAGMENT = "#environment";

    private ClusterPythonDriver() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            throw new IllegalArgumentException("usage: ClusterPythonDriver <console script> [job args...]");
        }
        SparkConf conf = new SparkConf();
        String archiveUrl = environmentArchive(conf.get("spark.archives", ""));
        File workDir = new File(".").getCanonicalFile();
        File environment = new File(workDir, "environment");
        if (!new File(environment, "bin/python").exists()) {
            File local = new File(workDir, "environment.tar.gz");
            Configuration hadoopConf = SparkHadoopUtil.get().newConfiguration(conf);
            Path source = new Path(archiveUrl);
            FileSystem fs = source.getFileSystem(hadoopConf);
            fs.copyToLocalFile(source, new Path(local.toURI()));
            FileUtil.unTar(local, environment);  // keeps permissions; gunzips by the .gz name
            if (!local.delete()) {
                System.err.println("ClusterPythonDriver: could not delete " + local);
            }
        }
        File python = new File(environment, "bin/python");
        File script = new File(environment, "bin/" + args[0]);
        if (!script.exists()) {
            throw new IllegalArgumentException("no console script " + args[0] + " in " + archiveUrl);
        }
        // PythonRunner reads the driver's Python from this setting; the executors keep spark.pyspark.python.
        System.setProperty("spark.pyspark.driver.python", python.getPath());
        List<String> runnerArgs = new ArrayList<>();
        runnerArgs.add(script.getPath());
        runnerArgs.add("");  // no --py-files: the code is in the environment
        runnerArgs.addAll(Arrays.asList(args).subList(1, args.length));
        PythonRunner.main(runnerArgs.toArray(new String[0]));
    }

    static String environmentArchive(String archives) {
        for (String entry : archives.split(",")) {
            String trimmed = entry.trim();
            if (trimmed.endsWith(ENV_FRAGMENT)) {
                return trimmed.substring(0, trimmed.length() - ENV_FRAGMENT.length());
            }
        }
        throw new IllegalArgumentException(
            "spark.archives names no archive unpacked as 'environment' (URL#environment), got: " + archives);
    }
}
